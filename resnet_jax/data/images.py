"""One picture: decoded from a file, framed for evaluation, or cropped at random for training.

Everything here works on one example on the host (in worker processes, in the
memory pipeline's decode, and in predict) and imports neither JAX nor
TensorFlow, so worker processes start fast. Eval and predict frame a picture
with the same function (`frame`), as torchvision's `Resize(round(size /
crop_fraction))` then `CenterCrop(size)` do it.
"""

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

# Crop aspect ratios (width / height) of train_crop="random_resized", as torchvision's default.
CROP_RATIO = (3 / 4, 4 / 3)
# Pillow first reduces by a whole factor (box averages) when a resize shrinks more than
# 2 * this: far cheaper on large pictures, and as good as one pass.
_REDUCING_GAP = 3.0


def to_mode_array(image: Image.Image, channels: int = 3) -> np.ndarray:
  """Any Pillow mode to uint8 [H, W, channels] (1: grey, 3: RGB)."""
  if channels == 1:
    if image.mode.startswith("I"):
      return (np.clip(np.asarray(image, np.int64), 0, 65535) // 257).astype(np.uint8)[..., None]
    return np.asarray(image if image.mode == "L" else image.convert("L"))[..., None]
  if image.mode == "RGB":
    return np.asarray(image)
  if image.mode.startswith("I"):
    # 16-bit grey (PNG, TIFF): Pillow's own conversion clips at 255, which
    # turns nearly every pixel white; scale the 16-bit range instead.
    grey = (np.clip(np.asarray(image, np.int64), 0, 65535) // 257).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")  # Through RGBA, as Pillow asks for palette transparency.
  # Alpha is dropped, as torchvision's loader does, so predictions match
  # models trained with it.
  return np.asarray(image.convert("RGB"))


def open_image(path: str, min_side: int = 0,
               check_size: Callable[[int, int], None] | None = None) -> Image.Image:
  """Decodes an image file, EXIF orientation applied; the caller closes it.

  Args:
    path: the image file.
    min_side: when set, a JPEG at least twice this size on its shorter side is
      decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper than a full
      decode), keeping the shorter side >= min_side.
    check_size: called with (width, height) before the pixels are decoded;
      when given, it replaces Pillow's own pixel limit.
  """
  pillow_limit = Image.MAX_IMAGE_PIXELS
  if check_size is not None:
    Image.MAX_IMAGE_PIXELS = None  # Pillow's limit warns (or fails) in Image.open itself.
  try:
    image = Image.open(path)
  finally:
    Image.MAX_IMAGE_PIXELS = pillow_limit
  try:
    if min_side and image.format == "JPEG":
      image.draft(None, (min_side, min_side))  # Square: right before and after EXIF rotation.
    if check_size is not None:
      check_size(*image.size)
    image.load()  # Decode now: a truncated file fails here.
    ImageOps.exif_transpose(image, in_place=True)
    return image
  except BaseException:
    image.close()
    raise


def _draft_factor(width: int, height: int, min_side: int) -> int:
  """The DCT reduction (8, 4, 2 or 1) Pillow's `draft` picks to keep both sides >= min_side."""
  if not min_side:
    return 1
  most = min(width // min_side, height // min_side)
  return next(k for k in (8, 4, 2, 1) if k <= max(most, 1))


_EXIF, _XMP = b"Exif\0\0", b"http://ns.adobe.com/xap/1.0/\0"
_ORIENTATION = 0x0112


def _tiff_orientation(tiff: bytes) -> int | None:
  """The Orientation tag of an EXIF block's first IFD (1 without one); None if malformed."""
  order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
  if order is None or int.from_bytes(tiff[2:4], order) != 42:
    return None
  ifd = int.from_bytes(tiff[4:8], order)
  if ifd + 2 > len(tiff):
    return None
  count = int.from_bytes(tiff[ifd:ifd + 2], order)
  if ifd + 2 + 12 * count > len(tiff):
    return None
  for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
    if int.from_bytes(tiff[entry:entry + 2], order) == _ORIENTATION:
      if int.from_bytes(tiff[entry + 2:entry + 4], order) != 3:  # SHORT, as the standard says.
        return None
      return int.from_bytes(tiff[entry + 8:entry + 10], order)
  return 1


def jpeg_orientation(data: bytes) -> int | None:
  """The EXIF orientation (1-8) that Pillow's `exif_transpose` would apply to a JPEG, from
  the segments before its image data; None where only Pillow can tell (an XMP packet,
  which Pillow also reads, or a malformed header)."""
  orientation, pos = 1, 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # Fill byte.
      pos += 1
      continue
    if marker == 0xDA:  # Start of scan: every header segment has been seen.
      return orientation
    if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # No length field.
      pos += 2
      continue
    length = int.from_bytes(data[pos + 2:pos + 4], "big")
    segment = data[pos + 4:pos + 2 + length]
    if marker == 0xE1 and segment.startswith(_XMP):
      return None
    if marker == 0xE1 and segment.startswith(_EXIF) and orientation == 1:
      orientation = _tiff_orientation(segment[len(_EXIF):])
      if orientation is None:
        return None
    pos += 2 + length
  return None


def decode_rgb_jpeg(path: str, min_side: int = 0) -> np.ndarray | None:
  """A colour JPEG without EXIF rotation decoded by simplejpeg to RGB uint8, else None.

  The same libjpeg-turbo decode as Pillow's (the same pixels, reduced by the
  factor `open_image` would pick), without Pillow's image object and copies,
  and with the header read by simplejpeg and `jpeg_orientation`: about 1.5x
  as fast on 500x375 photos. Anything else (other formats, grey, CMYK,
  rotated, or simplejpeg missing) returns None: the caller uses Pillow.
  """
  try:
    import simplejpeg
  except ImportError:
    return None
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\xff\xd8":
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:  # Not a header libjpeg-turbo reads: Pillow says why.
    return None
  if colorspace not in ("YCbCr", "RGB") or jpeg_orientation(data) != 1:
    return None
  factor = _draft_factor(width, height, min_side)
  try:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                  min_width=-(-width // factor))
  except ValueError:  # A file libjpeg-turbo rejects: Pillow says why (or decodes what it can).
    return None


def decode_bytes(data: bytes, channels: int | None) -> np.ndarray:
  """An encoded image (PNG, JPEG, ...) to uint8 [H, W, C]."""
  with Image.open(io.BytesIO(data)) as image:
    return to_mode_array(image, 1 if channels == 1 else 3)


def _resized(image: Image.Image, size_hw: tuple[int, int],
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
  height, width = size_hw
  return image.resize((width, height), Image.Resampling.BILINEAR, box=box,
                      reducing_gap=_REDUCING_GAP)


def resize(image_HWC: np.ndarray, size_hw: tuple[int, int],
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Bilinear, antialiased resize of image_HWC (or of its `box`, as left, top, right, bottom)."""
  channels = image_HWC.shape[-1]
  if channels == 3:
    return np.asarray(_resized(Image.fromarray(image_HWC, "RGB"), size_hw, box))
  # One 8-bit plane each: Pillow has no mode for 2 channels, and premultiplies RGBA.
  planes = [_resized(Image.fromarray(np.ascontiguousarray(image_HWC[..., c]), "L"), size_hw, box)
            for c in range(channels)]
  return np.stack([np.asarray(p) for p in planes], axis=-1)


def framing(height: int, width: int, out_height: int, out_width: int,
            crop_fraction: float = 1.0) -> tuple[tuple[int, int], tuple[int, int]]:
  """((resized height, width), (top, left) of the centre crop) that `frame` uses.

  The picture is scaled so that it covers round(out / crop_fraction) on both
  sides, the longer side truncated as torchvision's `Resize(int)` does, and
  the centre out_height x out_width is kept (torchvision's `CenterCrop`).
  """
  target_h, target_w = round(out_height / crop_fraction), round(out_width / crop_fraction)
  if height * target_w <= width * target_h:  # Height is the side that limits.
    new_h, new_w = target_h, max(target_w, int(target_h * width / height))
  else:
    new_h, new_w = max(target_h, int(target_w * height / width)), target_w
  top, left = int(round((new_h - out_height) / 2.0)), int(round((new_w - out_width) / 2.0))
  return (new_h, new_w), (top, left)


def eval_crop_fraction(config) -> float:
  """The centre-crop fraction eval and predict frame pictures with (a config or its dict)."""
  if config.get("eval_crop_fraction"):
    return float(config["eval_crop_fraction"])
  return 0.875 if config.get("train_crop") == "random_resized" else 1.0


def cover_side(out_height: int, out_width: int, crop_fraction: float = 1.0) -> int:
  """The shorter side a picture needs before `frame`: what a reduced decode must keep."""
  return round(max(out_height, out_width) / crop_fraction)


def frame(image: "Image.Image | np.ndarray", out_height: int, out_width: int,
          crop_fraction: float = 1.0, channels: int = 3) -> np.ndarray:
  """The eval and predict view of a picture: resized to cover, then centre-cropped, as uint8.

  A Pillow image (of any mode, converted to `channels`) is resized without a
  full-size copy when it is grey or RGB; an array keeps its channel count.
  """
  height, width = (image.height, image.width) if isinstance(image, Image.Image) else (
      image.shape[0], image.shape[1])
  (new_h, new_w), (top, left) = framing(height, width, out_height, out_width, crop_fraction)
  if isinstance(image, Image.Image):
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
      image = Image.fromarray(to_mode_array(image, channels)[..., 0] if channels == 1
                              else to_mode_array(image, channels), mode)
    if (new_h, new_w) != (height, width):
      image = _resized(image, (new_h, new_w))
    array = to_mode_array(image, channels)
  else:
    array = image if (new_h, new_w) == (height, width) else resize(image, (new_h, new_w))
  return array[top:top + out_height, left:left + out_width]


def resize_center_crop(image_HWC: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
  """`frame` to size x size: the shorter side to round(size / crop_fraction), the centre kept."""
  height, width = image_HWC.shape[:2]
  if height == width == size and crop_fraction == 1.0:
    return image_HWC
  return frame(image_HWC, size, size, crop_fraction)


def min_decode_side(image_size: int, scale: tuple[float, float],
                    ratio: tuple[float, float] = CROP_RATIO) -> int:
  """Shorter side a picture must keep so that no random-resized crop of it is upsampled.

  A crop of area fraction s and aspect r of a square of side S has sides
  S * sqrt(s * r) and S * sqrt(s / r); the smallest, at s = scale[0] and the
  most extreme ratio, must still cover image_size.
  """
  narrowest = min(ratio[0], 1 / ratio[0], ratio[1], 1 / ratio[1])
  return math.ceil(image_size / math.sqrt(scale[0] * narrowest))


def random_resized_box(height: int, width: int, rng: np.random.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
  """(top, left, h, w) of an Inception-style crop, as torchvision's `RandomResizedCrop.get_params`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # Fallback: the central crop with the aspect ratio clamped into `ratio`.
  if width / height < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif width / height > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image_HWC: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = CROP_RATIO) -> np.ndarray:
  """Inception-style crop (as torchvision's RandomResizedCrop), resized to size x size."""
  top, left, h, w = random_resized_box(image_HWC.shape[0], image_HWC.shape[1], rng, scale, ratio)
  return resize(image_HWC, (size, size), box=(left, top, left + w, top + h))
