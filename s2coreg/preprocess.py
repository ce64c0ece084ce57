"""Sentinel-2 products → normalised, geo-referenced images for the matching stages.

    python data_preprocess.py --input PATH --output data/preprocessed [--bands B04,B03,B02]
                              [--size 1024] [--tile 1024 --overlap 64] [--format jpeg|png|tif]

``PATH`` is a ``.SAFE`` folder, a zipped ``.SAFE`` as downloaded from the Copernicus
browser, a folder holding several of either, or plain GeoTIFF / JP2 band files (a file,
or a folder of files named by band such as ``B04.tif``). Level-1C and Level-2A layouts.

Per product, written to ``<output>/<product name>/`` (all or nothing: the folder is built
under a temporary name and renamed when complete):
    * ``overview.<ext>``: the whole tile at ``--size`` px on its longer side, read from the
      JPEG 2000 resolution levels (decimated reads), never the full 10980² raster;
    * ``tiles/r<row>_c<col>.<ext>`` with ``--tile``: native 10 m tiles with ``--overlap``;
    * beside each image a ``.json`` sidecar (CRS, affine transform of *that image's own*
      pixel grid, tile id, sensing date, bands, processing baseline, offsets, source), a
      ``_nodata.png`` mask (255 = no data) and, when the product has them, ``_cloud.png``
      (cloud probability 0-100 for L2A, 255 = opaque cloud or cirrus for L1C) and ``_scl.png``.

The stage as a function: ``preprocess(inputs, output, cfg)`` (the command line's ``main`` calls
it) → ``Preprocessed``, each product written (``Written``) and each that failed. The products are
read through the reading library, ``s2coreg.io.products``.

Radiometry: reflectance = (DN + offset) / QUANTIFICATION_VALUE, with the offset of -1000
that products from processing baseline 04.00 on carry (RADIO_ADD_OFFSET / BOA_ADD_OFFSET),
then clipped to a fixed range (``--reflectance-range``, default 0-0.3) and optionally
gamma-corrected: the same mapping for every date, so one place looks alike on all of them.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import s2coreg.cli as cli
import s2coreg.config as config
from s2coreg.config import PreprocessConfig
from s2coreg.io.products import Found, Grid, Product, find_products, render, render_masks, reference_grid
from s2coreg.utils import PipelineError, atomic_path, write_json

FORMATS = {"jpeg": ".jpg", "png": ".png", "tif": ".tif"}


# ----------------------------------------------------------------------------- writing
def write_image(path: Path, image01: np.ndarray, fmt: str, transform=None, crs=None, quality: int = 95) -> None:
    """0..1 image (H, W) or (H, W, C) → 8-bit file; GeoTIFF keeps the georeferencing inside."""
    data = np.clip(np.round(image01 * 255), 0, 255).astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    with atomic_path(path) as tmp:
        if fmt == "tif":
            import rasterio

            bands = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
            with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                               count=bands.shape[0], dtype="uint8", crs=crs, transform=transform,
                               compress="deflate") as dst:
                dst.write(bands)
        else:
            from PIL import Image

            im = Image.fromarray(data if data.ndim == 2 or data.shape[2] in (3, 4) else data[..., :3])
            if fmt == "jpeg":
                im.save(tmp, format="JPEG", quality=quality)
            else:
                im.save(tmp, format="PNG")


def write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG")


def write_output(folder: Path, stem: str, product: Product, bands, grid: Grid, window_px, out_shape,
                 cfg: PreprocessConfig, kind: str) -> None:
    """One image with its sidecar JSON and masks."""
    import s2coreg.io.geo as geo

    image, nodata = render(product, bands, grid, window_px, out_shape, cfg)
    col, row, w, h = window_px
    transform = geo.window_transform(grid.transform, window_px, out_shape)
    ext = FORMATS[cfg.format]
    write_image(folder / f"{stem}{ext}", image, cfg.format, transform, grid.crs, cfg.jpeg_quality)
    masks = {"nodata": nodata.astype(np.uint8) * 255}
    if cfg.masks:
        masks.update(render_masks(product, grid, window_px, out_shape))
    for name, m in masks.items():
        write_mask(folder / f"{stem}_{name}.png", m)
    write_json(folder / f"{stem}.json", {
        "image": f"{stem}{ext}", "output": kind, "size": [out_shape[1], out_shape[0]],
        **geo.sidecar_georeference(transform, grid.crs),
        "window_10m": {"col_off": col, "row_off": row, "width": w, "height": h},
        "tile_id": product.tile_id, "sensing_date": product.sensing_date, "product_id": product.product_id,
        "processing_level": product.level, "processing_baseline": product.processing_baseline,
        "bands": list(bands), "quantification": product.quantification,
        "offsets": {b: product.offsets.get(b, 0.0) for b in bands},
        "reflectance_range": [cfg.reflectance_min, cfg.reflectance_max], "gamma": cfg.gamma,
        "nodata_fraction": round(float(nodata.mean()), 4),
        "masks": {name: f"{stem}_{name}.png" for name in masks}, "source": product.source,
    })


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` with at least ``overlap``;
    the last tile is aligned to the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def preprocess_product(product: Product, output: Path, bands: list[str], cfg: PreprocessConfig,
                       progress: bool = True) -> int:
    """Write every output of one product; all or nothing. Returns the number of images."""
    from s2coreg.display import tqdm

    missing = [b for b in bands if b not in product.band_files]
    if missing:
        raise PipelineError(f"{product.source}: band {', '.join(missing)} not in this product (it has "
                            f"{', '.join(sorted(product.band_files))}); choose others with bands=")
    grid = reference_grid(product, bands)
    jobs = []
    if cfg.size > 0:
        scale = min(cfg.size / max(grid.width, grid.height), 1.0)  # never above native resolution
        shape = (max(1, round(grid.height * scale)), max(1, round(grid.width * scale)))
        jobs.append(("overview", "overview", (0, 0, grid.width, grid.height), shape))
    if cfg.tile > 0:
        for r in tile_origins(grid.height, cfg.tile, cfg.overlap):
            for c in tile_origins(grid.width, cfg.tile, cfg.overlap):
                w, h = min(cfg.tile, grid.width - c), min(cfg.tile, grid.height - r)
                jobs.append((f"tiles/r{r:05d}_c{c:05d}", "tile", (c, r, w, h), (h, w)))
    final = output / product.name
    tmp = output / f".{product.name}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tiles").mkdir(parents=True) if cfg.tile > 0 else tmp.mkdir(parents=True)
    try:
        for stem, kind, window, shape in tqdm(jobs, desc=product.name[:40], unit="img", disable=not progress,
                                              leave=False):
            write_output(tmp, stem, product, bands, grid, window, shape, cfg, kind)
        if final.exists():
            old = output / f".{product.name}.old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(jobs)


# ----------------------------------------------------------------------------- the stage
@dataclass
class Written:
    """One product preprocessed: its folder ``<output>/<product name>/`` and the number of images
    in it (the overview and the tiles; each with its sidecar and masks)."""

    product: Product = field(repr=False)
    folder: Path
    images: int


@dataclass
class Preprocessed:
    """What ``preprocess`` did: the products written, in input order, and for each input or product
    it could not do, ``(source, message)`` (a batch goes on past a bad product)."""

    written: list[Written]
    errors: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.written) + len(self.errors)

    @property
    def images(self) -> int:
        return sum(w.images for w in self.written)


def check_settings(cfg: PreprocessConfig) -> list[str]:
    """The bands of ``cfg`` as the readers name them, once its settings are checked: something to
    write, an overlap smaller than the tile, a reflectance range and gamma that map (else a
    ``PipelineError``)."""
    bands = parse_bands(",".join(cfg.bands))
    if cfg.size <= 0 and cfg.tile <= 0:
        raise PipelineError(f"size={cfg.size} and tile={cfg.tile}: nothing to write; give a size or a tile above 0")
    if cfg.tile > 0 and not 0 <= cfg.overlap < cfg.tile:
        raise PipelineError(f"overlap={cfg.overlap} must be >= 0 and smaller than tile={cfg.tile}")
    if cfg.reflectance_max <= cfg.reflectance_min:
        raise PipelineError(f"reflectance_min={cfg.reflectance_min} must be below reflectance_max={cfg.reflectance_max}")
    if cfg.gamma <= 0:
        raise PipelineError(f"gamma={cfg.gamma} must be above 0")
    if cfg.format not in FORMATS:
        raise PipelineError(f"format={cfg.format!r}: choose {', '.join(sorted(FORMATS))}")
    return bands


def resolve_inputs(inputs, scale: float = config.S2_DEFAULT_QUANTIFICATION, offset: float = 0.0) -> Found:
    """``inputs`` as the products to write, resolved once before any work: a path or URL (anything
    ``find_products`` takes), a ``Product``, a ``Found``, or a list of them. An input that holds no
    product is a ``PipelineError``; one that holds a product it cannot open is in ``errors``."""
    found = Found([], [])
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if isinstance(item, Product):
            found.products.append(item)
            continue
        more = item if isinstance(item, Found) else find_products(item, scale, offset)
        found.products.extend(more.products)
        found.errors.extend(more.errors)
    return found


def writable_folder(output) -> Path:
    """``output`` made (with its parents) and checked by writing into it, before any work."""
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PipelineError(f"{output}: cannot write here ({exc.strerror}); choose another output=") from exc
    return output


def preprocess(inputs, output=config.PREPROCESSED_DIR, cfg: PreprocessConfig | None = None, *,
               scale: float = config.S2_DEFAULT_QUANTIFICATION, offset: float = 0.0, progress: bool = True,
               **overrides) -> Preprocessed:
    """Write the preprocessed images of every product in ``inputs`` to ``output/<product name>/``
    (see the module docstring), each product all or nothing.

    ``inputs``: see ``resolve_inputs``; ``cfg`` (default ``PreprocessConfig()``) with keyword
    ``overrides`` of its fields (``preprocess(path, out, size=256, format="png")``); ``scale``,
    ``offset``: plain band files only (``find_products``); ``progress``: tqdm bars.

    Bad settings, an input that holds no product or an output that cannot be written raise a
    ``PipelineError`` before anything is written; a product that fails is reported in the result's
    ``errors`` and the others go on.
    """
    cfg = config.replace(cfg or PreprocessConfig(), **overrides)
    bands = check_settings(cfg)
    found = resolve_inputs(inputs, scale, offset)
    output = writable_folder(output)

    from s2coreg.display import tqdm

    done = Preprocessed([], list(found.errors))
    for product in tqdm(found.products, desc="products", unit="product", disable=not progress or len(found) < 2):
        try:
            images = preprocess_product(product, output, bands, cfg, progress=progress)
        except PipelineError as exc:
            done.errors.append((product.source, str(exc)))
        else:
            done.written.append(Written(product, output / product.name, images))
    return done


# ----------------------------------------------------------------------------- script
def parse_bands(text: str) -> list[str]:
    bands = [b.strip().upper() for b in text.split(",") if b.strip()]
    bands = [b if b == "B8A" else re.sub(r"^B(\d)$", r"B0\1", b) for b in bands]
    unknown = [b for b in bands if b not in config.S2_BAND_RESOLUTION]
    if unknown or not bands:
        raise PipelineError(f"bands=: unknown band {', '.join(unknown) or '(none)'}; choose from "
                            f"{', '.join(config.S2_BANDS)}")
    return bands


def main(argv=None) -> int:
    d = PreprocessConfig()
    parser = cli.parser(__doc__)
    parser.add_argument("--input", type=Path, required=True,
                        help=".SAFE folder, zipped .SAFE, folder of several, or GeoTIFF/JP2 band file(s)")
    parser.add_argument("--output", type=Path, default=config.PREPROCESSED_DIR, help="output folder")
    parser.add_argument("--bands", default=",".join(d.bands),
                        help="comma-separated bands, e.g. B04,B03,B02 (true colour) or B08 (NIR)")
    parser.add_argument("--size", type=int, default=d.size,
                        help="overview side in px (longer side, at most native; the original project used 224); 0 = none")
    parser.add_argument("--tile", type=int, default=d.tile, help="native-resolution tile side in px; 0 = no tiles")
    parser.add_argument("--overlap", type=int, default=d.overlap, help="overlap between tiles in px")
    parser.add_argument("--format", choices=sorted(FORMATS), default=d.format,
                        help="jpeg (small), png (lossless) or tif (georeferencing inside)")
    parser.add_argument("--reflectance-range", type=float, nargs=2, default=(d.reflectance_min, d.reflectance_max),
                        metavar=("MIN", "MAX"), help="reflectance mapped to 0..255, the same for every date")
    parser.add_argument("--gamma", type=float, default=d.gamma, help="gamma after clipping (1 = linear)")
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    parser.add_argument("--no-masks", action="store_true", help="skip cloud / scene-classification masks")
    parser.add_argument("--scale", type=float, default=config.S2_DEFAULT_QUANTIFICATION,
                        help="plain band files only: DN per unit reflectance")
    parser.add_argument("--offset", type=float, default=0.0,
                        help="plain band files only: offset added to DN (-1000 for baseline >= 04.00 data)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        cfg = config.replace(PreprocessConfig(), bands=tuple(parse_bands(args.bands)), size=args.size,
                             tile=args.tile, overlap=args.overlap, format=args.format,
                             reflectance_min=args.reflectance_range[0], reflectance_max=args.reflectance_range[1],
                             gamma=args.gamma, jpeg_quality=args.jpeg_quality, masks=not args.no_masks)
        done = preprocess(args.input, args.output, cfg, scale=args.scale, offset=args.offset)
    except PipelineError as exc:
        return cli.fail(exc)
    print(f"{len(done.written)} of {len(done)} products, {done.images} images written to {args.output} "
          f"in {time.time() - start:.1f} s" + (f"; {len(done.errors)} failed:" if done.errors else ""))
    for source, message in done.errors:
        message = cli.flags(message)
        print(f"error: {message}" if message.startswith(source) else f"error: {source}: {message}", file=sys.stderr)
    return 1 if done.errors else 0
