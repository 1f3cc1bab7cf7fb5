"""Checking image data before training: every image decoded once, paths kept inside the data's folder.

A bad image names its file in one message; an image too large to decode safely is refused from its header.
"""

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from datasets import Dataset, Image
from PIL import Image as PILImage

from finetune.errors import UserError

# Threads decoding images while checking them (PIL releases the GIL while decoding).
DECODE_THREADS = min(8, os.cpu_count() or 1)
# Largest image accepted (pixels, from its header): a 2.8 MB PNG of 8000x8000 decodes to 190 MB. 40 MP is
# beyond any camera photo these models read at 224x224.
MAX_IMAGE_PIXELS = 40_000_000


def check_images(table: Dataset, column: str, source: str, role: str) -> Dataset:
    """Image column as decodable images: paths resolved against the data file's folder, every image decoded once."""
    if not isinstance(table.features[column], Image):
        base = Path(source).parent.resolve()
        _check_inside(table[column], base, f"{role}: column {column!r} of {source}")

        def resolve(batch):
            return {column: [str(base / p) for p in batch[column]]}

        table = table.map(resolve, batched=True)
    raw = table.cast_column(column, Image(decode=False))
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        bad = [problem for problem in pool.map(_image_problem, range(len(raw)), raw[column]) if problem]
    if bad:
        raise UserError(
            f"{role}: {len(bad)} image(s) in column {column!r} of {source} cannot be read: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
            "expected complete .png/.jpg/.bmp/.gif/.webp files"
        )
    return table.cast_column(column, Image())


def _check_inside(paths: list, base: Path, where: str) -> None:
    """Image paths must be relative and stay in the data file's folder: a data file must not reach other files."""
    for value in paths:
        text = str(value or "")
        if not text or Path(text).is_absolute() or not (base / text).resolve().is_relative_to(base):
            raise UserError(
                f"{where}: image path {text!r} is not inside {base}; expected paths relative to the "
                "data file's folder (e.g. images/cat_1.jpg)"
            )


def _image_problem(index: int, item: dict) -> Optional[str]:
    """Why one image cannot be decoded, or None. load() decodes every pixel: verify() passes truncated files."""
    try:
        with PILImage.open(item["path"] if item.get("bytes") is None else io.BytesIO(item["bytes"])) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:  # checked from the header, before decoding
                return (
                    f"{item.get('path') or f'row {index}'} ({image.width}x{image.height} pixels; at most "
                    f"{MAX_IMAGE_PIXELS:,} are accepted)"
                )
            image.load()
        return None
    except FileNotFoundError:
        reason = "no such file"
    except PILImage.UnidentifiedImageError:
        reason = "not an image"
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        reason = str(err) or type(err).__name__
    return f"{item.get('path') or f'row {index}'} ({reason})"
