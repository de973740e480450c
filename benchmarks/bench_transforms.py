"""Transform benchmarks: the cost of drawing and replaying views, measured in one run.

    .venv/bin/python benchmarks/bench_transforms.py [--views 2000] [--repeats 3]

1. draw: microseconds per view (a ViewDrawer reused, as a cache worker would).
2. apply: microseconds per sample of pipeline.transforms.apply on one sample, and of apply_batch on
   --samples at once (the same code, vectorised over the batch: what a DataLoader worker calls), and
   the ratio of apply_batch to Pillow doing the same geometric steps one image at a time (Pillow's
   output is not part of any contract; it is the usual speed reference). Best of --repeats, since
   the machine may be shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.transforms import PartnerPool, ViewDrawer, apply, apply_batch, stack_views  # noqa: E402

CASES = {
    "digits (1,8,8) f32: shift+rotate+mixup": (
        (1, 8, 8),
        np.float32,
        [{"kind": "shift", "pixels": 1}, {"kind": "rotate", "degrees": 15}, {"kind": "mixup", "alpha": 0.2}],
    ),
    "cifar (3,32,32) u8: crop pad 4+flip": (
        (3, 32, 32),
        np.uint8,
        [{"kind": "crop", "size": 32, "padding": 4}, {"kind": "flip"}],
    ),
    "imagenet (3,256,256) u8: resized_crop 224+flip": (
        (3, 256, 256),
        np.uint8,
        [{"kind": "resized_crop", "size": 224}, {"kind": "flip"}],
    ),
    "imagenet (3,224,224) u8: rotate 15": ((3, 224, 224), np.uint8, [{"kind": "rotate", "degrees": 15}]),
}


def best_seconds(function, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `function`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def pillow_step(spec: list[dict], image: np.ndarray, view) -> None:
    """Pillow doing the geometric part of `spec` once on `image` (C, H, W) uint8/float32."""
    from PIL import Image

    picture = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    for step in spec:
        if step["kind"] == "rotate":
            picture = picture.rotate(view.angle, resample=Image.BILINEAR)
        elif step["kind"] == "resized_crop":
            box = (
                view.crop_left,
                view.crop_top,
                view.crop_left + view.crop_width,
                view.crop_top + view.crop_height,
            )
            picture = picture.resize((224, 224), Image.BILINEAR, box=box)
        elif step["kind"] == "flip" and view.flip:
            picture = picture.transpose(Image.FLIP_LEFT_RIGHT)
        elif step["kind"] == "crop":
            picture = picture.crop(
                (view.crop_left - 4, view.crop_top - 4, view.crop_left + 28, view.crop_top + 28)
            )
    np.asarray(picture)


def measure(shape: tuple[int, ...], dtype, spec: list[dict], args: argparse.Namespace) -> str:
    """One table row: draw us/view, apply us/sample, Pillow us/sample and the ratio (no Pillow for mixup)."""
    rng = np.random.default_rng(0)
    drawer = ViewDrawer(spec, 0, shape, PartnerPool(np.arange(1000)))
    draw_s = best_seconds(lambda: [drawer.draw(index, 0) for index in range(args.views)], args.repeats)
    images = (rng.random((args.samples, *shape)) * 255).astype(dtype)
    views = [drawer.draw(index, 0) for index in range(args.samples)]
    mixes = any(step["kind"] == "mixup" for step in spec)

    def replay() -> None:
        for index, (image, view) in enumerate(zip(images, views)):
            apply(spec, view, image, images[index - 1] if mixes else None)

    apply_s = best_seconds(replay, args.repeats) / args.samples
    table, partners = stack_views(views), np.roll(images, 1, axis=0) if mixes else None
    batch_s = best_seconds(lambda: apply_batch(spec, table, images, partners), args.repeats) / args.samples
    row = f"{draw_s / args.views * 1e6:13.1f} {apply_s * 1e6:10.0f} {batch_s * 1e6:10.0f}"
    if mixes:
        return row
    pillow_s = best_seconds(lambda: [pillow_step(spec, i, v) for i, v in zip(images, views)], args.repeats)
    pillow_s /= args.samples
    return f"{row} {pillow_s * 1e6:10.0f} {batch_s / pillow_s:13.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--views", type=int, default=2000, help="views drawn per case")
    parser.add_argument("--samples", type=int, default=64, help="samples applied per case (the batch)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    columns = ("draw us/view", "apply us", "batch us", "pillow us", "batch/pillow")
    print(
        f"{'case':48} "
        + " ".join(f"{column:>13}" if "/" in column else f"{column:>10}" for column in columns)
    )
    for name, (shape, dtype, spec) in CASES.items():
        print(f"{name:48} {measure(shape, dtype, spec, args)}")


if __name__ == "__main__":
    main()
