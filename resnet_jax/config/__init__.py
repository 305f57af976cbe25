"""The config: every field with its unit (default_config.py), and its checks (configuration.py).

`configuration.validate` refuses a config a run cannot start with;
`configuration.resolve` writes what the data decided into it once.

May import `models` (for the model names) and `errors`.
"""
