"""Resizes an RGB PNG with PIL's LANCZOS filter to each WxH given and writes
OUT_PREFIX-WxH.png, for imageproc's resampling parity test.
Usage: pil_resize.py IN.png OUT_PREFIX WxH [WxH ...]"""
import sys

from PIL import Image


def main(src, prefix, sizes):
    im = Image.open(src).convert("RGB")
    for s in sizes:
        w, h = (int(v) for v in s.split("x"))
        im.resize((w, h), resample=Image.LANCZOS).save(f"{prefix}-{s}.png")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
