"""An independent re-statement of the Hugging Face Idefics3 image processor's
arithmetic (image_processing_idefics3.py: resize to size.longest_edge,
resize_for_vision_encoder, split_image, rescale, normalize) on PIL images and
numpy, for imageproc's end-to-end parity test. transformers itself is not
installable here, so the steps are written out from its source.

Usage: hf_idefics3_ref.py IN.png OUT_PREFIX TILE LONGEST_EDGE SPLIT(0|1)
Writes OUT_PREFIX.f32 (all tiles, CHW float32 little-endian, crops row-major
then the global image) and OUT_PREFIX.json ({"rows", "cols", "tiles"})."""
import json
import math
import sys

import numpy as np
from PIL import Image

MAX_IMAGE_SIZE = 4096
MEAN = STD = [0.5, 0.5, 0.5]


def rescale_to_max_len(height, width, max_len):
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        if height % 2 != 0:
            height += 1
    elif height > width:
        height = max_len
        width = int(height * aspect)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def scale_below_upper_bound(height, width, max_len):
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def resize(im, height, width):
    if im.size == (width, height):
        return im.copy()
    return im.resize((width, height), resample=Image.LANCZOS)


def resize_for_vision_encoder(im, size):
    width, height = im.size
    aspect = width / height
    if width >= height:
        width = math.ceil(width / size) * size
        height = int(width / aspect)
        height = math.ceil(height / size) * size
    else:
        height = math.ceil(height / size) * size
        width = int(height * aspect)
        width = math.ceil(width / size) * size
    return resize(im, height, width)


def to_chw(im):
    x = np.array(im, dtype=np.uint8)
    x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    mean = np.array(MEAN, dtype=np.float32)
    std = np.array(STD, dtype=np.float32)
    x = (x - mean) / std  # normalize, channels last
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype("<f4")


def main(src, prefix, tile, longest, split):
    im = Image.open(src).convert("RGB")
    rows = cols = 0
    frames = []
    if not split:
        frames = [resize(im, tile, tile)]
    else:
        h, w = rescale_to_max_len(im.height, im.width, longest)
        h, w = scale_below_upper_bound(h, w, MAX_IMAGE_SIZE)
        im = resize(im, h, w)
        im = resize_for_vision_encoder(im, tile)
        if im.height > tile or im.width > tile:
            rows, cols = math.ceil(im.height / tile), math.ceil(im.width / tile)
            for r in range(rows):
                for c in range(cols):
                    frames.append(im.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)))
            im = resize(im, tile, tile)
        frames.append(im)
    with open(prefix + ".f32", "wb") as f:
        for fr in frames:
            f.write(to_chw(fr).tobytes())
    with open(prefix + ".json", "w") as f:
        json.dump({"rows": rows, "cols": cols, "tiles": len(frames)}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
