#!/usr/bin/env python3
"""ref_minicpmv_slice.py: MiniCPM-V 2.5 image slicing in plain Python + PIL,
written from the model's remote code (slice_image, find_best_resize,
get_refine_size, split_to_patches) as an independent reference for
sidecar/imageproc (SliceMiniCPMV). Run with Debian's /usr/bin/python3
(python3-pil):

    /usr/bin/python3 scripts/ref_minicpmv_slice.py IMAGE OUTPREFIX MAX_SLICES

writes OUTPREFIX.json ({grid, sizes}) and OUTPREFIX.<k>.rgb (raw 8-bit RGB of
slice k: the source image first, then the cells row-major).
"""
import json
import math
import sys

from PIL import Image


def ensure_divide(length, patch):
    return max(round(length / patch) * patch, patch)  # Python's round: half to even


def best_resize(size, scale, patch, allow_upscale=False):
    w, h = size
    if w * h > scale * scale or allow_upscale:
        r = w / h
        h = int(scale / math.sqrt(r))
        w = int(h * r)
    return ensure_divide(w, patch), ensure_divide(h, patch)


def refine_size(size, grid, scale, patch, allow_upscale=False):
    w, h = size
    gx, gy = grid
    rw, rh = ensure_divide(w, gx), ensure_divide(h, gy)
    bw, bh = best_resize((rw / gx, rh / gy), scale, patch, allow_upscale)
    return bw * gx, bh * gy


def slice_image(img, max_slices=9, scale=448, patch=14):
    w, h = img.size
    log_ratio = math.log(w / h)
    multiple = min(math.ceil(w * h / (scale * scale)), max_slices)
    if multiple <= 1:
        return img.resize(best_resize(img.size, scale, patch, True), Image.BICUBIC), [], None
    nums = [n for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= max_slices]
    source = img.copy().resize(best_resize(img.size, scale, patch), Image.BICUBIC)
    grids = [[m, n // m] for n in nums for m in range(1, n + 1) if n % m == 0]
    best, err = [1, 1], float("inf")
    for g in grids:
        e = abs(log_ratio - math.log(g[0] / g[1]))
        if e < err:
            best, err = g, e
    refined = img.resize(refine_size(img.size, best, scale, patch, True), Image.BICUBIC)
    cw, ch = refined.size[0] // best[0], refined.size[1] // best[1]
    cells = [refined.crop((x, y, x + cw, y + ch))
             for y in range(0, refined.size[1], ch) for x in range(0, refined.size[0], cw)]
    return source, cells, best


def main():
    path, prefix, max_slices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    img = Image.open(path).convert("RGB")
    source, cells, grid = slice_image(img, max_slices)
    images = [source] + cells
    for k, im in enumerate(images):
        with open(f"{prefix}.{k}.rgb", "wb") as f:
            f.write(im.tobytes())
    with open(prefix + ".json", "w") as f:
        json.dump({"grid": grid, "sizes": [list(im.size) for im in images]}, f)


if __name__ == "__main__":
    main()
