"""The offline demo catalog: product pictures drawn with PIL, with Myntra-style metadata and MODA captions.

    make_catalog("data/synthetic", num_items=3000, image_size=64, seed=0)
    draw_examples("examples", num_items=4)            # a few example photos, of different product types
    python -m moda.data.synthetic data/synthetic --num_items 3000

Writes an `imagefolder` layout (train/validation/test, each with metadata.csv and images/*.png) with the columns of
the real fashion-images catalog, so everything that reads one reads the other. Every caption attribute is visible:

- product type: the silhouette (t-shirt with short sleeves, shirt with a white collar and buttons, dress, trousers,
  shorts, skirt with a waistband, low casual shoe, sports shoe with a thick sole, sandal (sole and straps), flip flop
  (top view with a Y strap), heel, ankle boot, handbag with a handle);
- colour: the fill, from a palette of 12 colours at least 100 apart in RGB (tested), so no two can be confused at
  64 px; the shade jitters by at most 10 per channel;
- gender: kids' items (Boys, Girls) are drawn at about 60% of the adults' size; women's and girls' items carry a
  magenta bow at the top left, men's and boys' items none;
- usage: Sports items carry a white diagonal stripe, Formal items a dark trim along the bottom, Ethnic items a gold
  dotted border, Casual items nothing.
Patterns (solid, striped, checked, dotted, in white or near-black; stripes cover about a third of the item and dots
less, so the colour stays the majority there, but checks cover more than half of it: on a checked item the
pattern's white or near-black is the commonest colour) and small jitters of position, size, rotation (up to 4
degrees) and background tint vary within a class. Combinations stay plausible: dresses and skirts for Women and Girls, heels and handbags for Women, sports
shoes always Sports, no Formal flip flops.

The same seed gives byte-identical files (one `random.Random` for the rows, one per item for the drawing).
`output_dir` is written only when it does not exist, is an empty folder, or holds the marker file `.moda-synthetic`
that make_catalog leaves (then it is replaced); a catalog already drawn with the same settings is reused as it is.
"""

import argparse
import csv
import random
import shutil
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

CAPTION_TEMPLATE = "{Colour} {Usage} {ProductType} for {Gender} - {Category} {SubCategory}"
MARKER = ".moda-synthetic"  # make_catalog only ever overwrites a folder holding this marker
VERSION = 2  # part of the marker: a catalog drawn by older code is drawn again
SPLITS = ("train", "validation", "test")

COLOURS = {
    "Black": (25, 25, 25), "White": (250, 250, 250), "Red": (215, 25, 35), "Blue": (40, 110, 235),
    "Navy Blue": (25, 40, 135), "Green": (30, 150, 60), "Yellow": (250, 230, 50), "Pink": (245, 140, 190),
    "Grey": (135, 135, 135), "Brown": (120, 65, 25), "Purple": (130, 40, 170), "Orange": (250, 135, 10),
}
# product type -> (category, subcategory, genders, usages)
PRODUCTS = {
    "Tshirts": ("Apparel", "Topwear", ("Men", "Women", "Boys", "Girls"), ("Casual", "Sports")),
    "Shirts": ("Apparel", "Topwear", ("Men", "Women", "Boys"), ("Casual", "Formal")),
    "Dresses": ("Apparel", "Dress", ("Women", "Girls"), ("Casual", "Ethnic")),
    "Trousers": ("Apparel", "Bottomwear", ("Men", "Women"), ("Casual", "Formal")),
    "Shorts": ("Apparel", "Bottomwear", ("Men", "Women", "Boys", "Girls"), ("Casual", "Sports")),
    "Skirts": ("Apparel", "Bottomwear", ("Women", "Girls"), ("Casual", "Ethnic")),
    "Casual Shoes": ("Footwear", "Shoes", ("Men", "Women", "Boys", "Girls"), ("Casual",)),
    "Sports Shoes": ("Footwear", "Shoes", ("Men", "Women", "Boys", "Girls"), ("Sports",)),
    "Sandals": ("Footwear", "Sandal", ("Men", "Women", "Boys", "Girls"), ("Casual",)),
    "Flip Flops": ("Footwear", "Flip Flops", ("Men", "Women", "Boys", "Girls"), ("Casual",)),
    "Heels": ("Footwear", "Shoes", ("Women",), ("Casual", "Formal")),
    "Boots": ("Footwear", "Shoes", ("Men", "Women", "Boys", "Girls"), ("Casual",)),
    "Handbags": ("Accessories", "Bags", ("Women",), ("Casual", "Formal")),
}
PATTERNS = ("Solid", "Striped", "Checked", "Dotted")
COLUMNS = ["file_name", "ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage",
           "Pattern", "ProductTitle", "caption"]
GOLD, TRIM = (212, 175, 55), (40, 40, 40)


# --- silhouettes, in a unit box (0..1 x 0..1), drawn as polygons ------------------------------------------------

def _shirt():
    body = [(0.3, 0.08), (0.7, 0.08), (0.97, 0.25), (0.97, 0.7), (0.84, 0.7), (0.8, 0.35), (0.78, 0.95),
            (0.22, 0.95), (0.2, 0.35), (0.16, 0.7), (0.03, 0.7), (0.03, 0.25)]
    return [body]


SHAPES = {
    "Tshirts": lambda: [[(0.3, 0.1), (0.42, 0.1), (0.5, 0.18), (0.58, 0.1), (0.7, 0.1), (0.95, 0.3), (0.85, 0.42),
                         (0.75, 0.35), (0.75, 0.95), (0.25, 0.95), (0.25, 0.35), (0.15, 0.42), (0.05, 0.3)]],
    "Shirts": _shirt,
    "Dresses": lambda: [[(0.38, 0.05), (0.62, 0.05), (0.66, 0.4), (0.92, 0.95), (0.08, 0.95), (0.34, 0.4)]],
    "Trousers": lambda: [[(0.25, 0.05), (0.75, 0.05), (0.8, 0.97), (0.56, 0.97), (0.5, 0.3), (0.44, 0.97),
                          (0.2, 0.97)]],
    "Shorts": lambda: [[(0.2, 0.25), (0.8, 0.25), (0.9, 0.75), (0.56, 0.75), (0.5, 0.48), (0.44, 0.75),
                        (0.1, 0.75)]],
    "Skirts": lambda: [[(0.33, 0.2), (0.67, 0.2), (0.92, 0.85), (0.08, 0.85)]],
    "Casual Shoes": lambda: [[(0.05, 0.45), (0.45, 0.45), (0.6, 0.6), (0.95, 0.68), (0.95, 0.8), (0.05, 0.8)]],
    "Sports Shoes": lambda: [[(0.05, 0.35), (0.35, 0.35), (0.55, 0.55), (0.95, 0.62), (0.97, 0.8), (0.03, 0.8)],
                             [(0.03, 0.8), (0.97, 0.8), (0.95, 0.88), (0.05, 0.88)]],
    "Sandals": lambda: [[(0.05, 0.72), (0.95, 0.72), (0.95, 0.88), (0.05, 0.88)], [(0.1, 0.42), (0.32, 0.42),
                        (0.32, 0.72), (0.1, 0.72)], [(0.42, 0.42), (0.64, 0.42), (0.64, 0.72), (0.42, 0.72)],
                        [(0.74, 0.48), (0.92, 0.48), (0.92, 0.72), (0.74, 0.72)]],
    "Flip Flops": lambda: [[(0.3, 0.05), (0.7, 0.05), (0.75, 0.95), (0.25, 0.95)]],
    "Heels": lambda: [[(0.05, 0.35), (0.25, 0.35), (0.95, 0.75), (0.95, 0.82), (0.05, 0.55)],
                      [(0.05, 0.55), (0.14, 0.55), (0.12, 0.95), (0.07, 0.95)]],
    "Boots": lambda: [[(0.12, 0.05), (0.45, 0.05), (0.47, 0.52), (0.88, 0.62), (0.95, 0.8), (0.1, 0.8)],
                      [(0.1, 0.8), (0.95, 0.8), (0.95, 0.9), (0.1, 0.9)]],
    "Handbags": lambda: [[(0.1, 0.4), (0.9, 0.4), (0.95, 0.92), (0.05, 0.92)]],
}
# for the product titles
SINGULAR = {"Tshirts": "Tshirt", "Shirts": "Shirt", "Dresses": "Dress", "Skirts": "Skirt", "Casual Shoes": "Casual Shoes",
            "Sports Shoes": "Sports Shoes", "Sandals": "Sandals", "Flip Flops": "Flip Flops", "Heels": "Heels",
            "Boots": "Boots", "Handbags": "Handbag", "Trousers": "Trousers", "Shorts": "Shorts"}
TITLE_WORDS = {"Casual": ("", "Everyday ", "Relaxed "), "Sports": ("Training ", "Running ", "Active "),
               "Formal": ("Slim Fit ", "Classic ", "Office "), "Ethnic": ("Festive ", "Embroidered ", "Printed ")}


def _sample_item(rng: random.Random, index: int) -> dict:
    product_type = rng.choice(sorted(PRODUCTS))
    category, subcategory, genders, usages = PRODUCTS[product_type]
    row = {
        "ProductId": str(100000 + index),
        "Gender": rng.choice(genders),
        "Category": category,
        "SubCategory": subcategory,
        "ProductType": product_type,
        "Colour": rng.choice(sorted(COLOURS)),
        "Usage": rng.choice(usages),
        "Pattern": rng.choice(PATTERNS),
    }
    pattern = "" if row["Pattern"] == "Solid" else f"{row['Pattern']} "
    style = rng.choice(TITLE_WORDS[row["Usage"]])
    row["ProductTitle"] = f"{row['Gender']} {row['Colour']} {pattern}{style}{SINGULAR[product_type]}"
    row["caption"] = CAPTION_TEMPLATE.format(**row)
    return row


def _shade(colour, rng, amount=10):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _contrast(colour):
    return (255, 255, 255) if sum(colour) < 300 else (30, 30, 30)


def draw_item(row: dict, image_size: int, rng: random.Random) -> Image.Image:
    """One product picture: silhouette, colour, pattern, and the gender and usage cues of the module docstring."""
    scale_up = 4  # draw large and downsample: smooth edges at small sizes
    size = image_size * scale_up
    background = tuple(rng.randint(228, 246) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    kids = row["Gender"] in ("Boys", "Girls")
    extent = size * (0.56 if kids else 0.86) * rng.uniform(0.95, 1.04)
    left = (size - extent) / 2 + rng.uniform(-0.04, 0.04) * size
    top = (size - extent) / 2 + rng.uniform(-0.04, 0.04) * size

    def to_pixels(points):
        return [(left + x * extent, top + y * extent) for x, y in points]

    fill = _shade(COLOURS[row["Colour"]], rng)
    outline = (60, 60, 60)
    polygons = [to_pixels(polygon) for polygon in SHAPES[row["ProductType"]]()]
    for polygon in polygons:
        draw.polygon(polygon, fill=fill, outline=outline, width=scale_up)
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        mask_draw.polygon(polygon, fill=255)
    _draw_pattern(image, mask, row["Pattern"], _contrast(fill), extent, rng)
    for polygon in polygons:  # the outline again, over the pattern: the silhouette stays whole
        draw.polygon(polygon, outline=outline, width=scale_up)
    x0, y0 = min(x for p in polygons for x, _ in p), min(y for p in polygons for _, y in p)
    x1, y1 = max(x for p in polygons for x, _ in p), max(y for p in polygons for _, y in p)
    if row["ProductType"] == "Shirts":  # collar and buttons
        cx = (x0 + x1) / 2
        draw.polygon([(cx - extent * 0.12, y0), (cx, y0 + extent * 0.12), (cx + extent * 0.12, y0)], fill=(250, 250, 250))
        for k in range(4):
            y = y0 + extent * (0.25 + 0.17 * k)
            draw.ellipse([cx - 2 * scale_up, y - 2 * scale_up, cx + 2 * scale_up, y + 2 * scale_up], fill=outline)
    if row["ProductType"] == "Flip Flops":  # the Y strap
        cx = (x0 + x1) / 2
        for side in (x0 + extent * 0.05, x1 - extent * 0.05):
            draw.line([(cx, y0 + extent * 0.3), (side, y0 + extent * 0.55)], fill=outline, width=3 * scale_up)
    if row["ProductType"] == "Skirts":  # the waistband
        draw.rectangle([x0 + extent * 0.25, y0, x1 - extent * 0.25, y0 + extent * 0.07], fill=outline)
    if row["ProductType"] == "Handbags":  # handle
        draw.arc([x0 + extent * 0.25, y0 - extent * 0.3, x1 - extent * 0.25, y0 + extent * 0.3], 180, 360,
                 fill=outline, width=3 * scale_up)
    _draw_usage_cue(draw, row["Usage"], (x0, y0, x1, y1), extent, scale_up)
    if row["Gender"] in ("Women", "Girls"):  # a small bow at the top left
        bx, by, r = x0 + extent * 0.02, y0 + extent * 0.02, extent * 0.09
        draw.polygon([(bx, by - r), (bx + r, by), (bx, by + r)], fill=(230, 40, 140), outline=(90, 0, 50))
        draw.polygon([(bx + 2 * r, by - r), (bx + r, by), (bx + 2 * r, by + r)], fill=(230, 40, 140), outline=(90, 0, 50))
    # nearest-neighbour rotation at 4x, then a 4x4 box average: smooth edges, and fast
    image = image.rotate(rng.uniform(-4, 4), resample=Image.NEAREST, fillcolor=background)
    return image.reduce(scale_up)


def _draw_pattern(image, mask, pattern, colour, extent, rng):
    if pattern == "Solid":
        return
    layer = Image.new("RGB", image.size, colour)
    pattern_mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(pattern_mask)
    step = max(4, int(extent * rng.uniform(0.13, 0.17)))
    width, height = image.size
    if pattern in ("Striped", "Checked"):
        for y in range(0, height, step):
            draw.rectangle([0, y, width, y + step // 3], fill=255)
    if pattern == "Checked":
        for x in range(0, width, step):
            draw.rectangle([x, 0, x + step // 3, height], fill=255)
    if pattern == "Dotted":
        for y in range(step // 2, height, step):
            for x in range(step // 2, width, step):
                draw.ellipse([x - step // 6, y - step // 6, x + step // 6, y + step // 6], fill=255)
    image.paste(layer, (0, 0), ImageChops.multiply(pattern_mask, mask))


def _draw_usage_cue(draw, usage, box, extent, scale_up):
    x0, y0, x1, y1 = box
    if usage == "Sports":  # a white side stripe
        draw.line([(x0 + extent * 0.1, y1 - extent * 0.1), (x1 - extent * 0.1, y0 + extent * 0.35)],
                  fill=(255, 255, 255), width=max(1, int(extent * 0.06)))
        draw.line([(x0 + extent * 0.1, y1 - extent * 0.1), (x1 - extent * 0.1, y0 + extent * 0.35)],
                  fill=(20, 20, 20), width=max(1, int(extent * 0.02)))
    elif usage == "Formal":  # a dark trim along the bottom
        draw.rectangle([x0, y1 - extent * 0.08, x1, y1], fill=TRIM)
    elif usage == "Ethnic":  # a gold dotted border
        radius = extent * 0.035
        for k in range(9):
            x = x0 + (x1 - x0) * (k + 0.5) / 9
            draw.ellipse([x - radius, y1 - 3 * radius, x + radius, y1 - radius], fill=GOLD)


# --- the catalog ------------------------------------------------------------------------------------------------

def _check_arguments(output_dir: Path, num_items, image_size, seed, splits) -> None:
    for name, value in (("num_items", num_items), ("image_size", image_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {value!r}.")
    try:
        fractions = [float(fraction) for fraction in splits]
    except (TypeError, ValueError):
        raise ValueError(f"splits must be three fractions (train, validation, test), got {splits!r}.") from None
    if len(fractions) != len(SPLITS):
        raise ValueError(f"splits must be three fractions (train, validation, test), got {len(fractions)}: {splits!r}.")
    if any(not fraction > 0 for fraction in fractions):
        raise ValueError(f"splits must all be positive (every split gets items), got {splits!r}.")
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"splits must sum to 1, got {splits!r} (sum {sum(fractions):g}).")
    if num_items < len(SPLITS):
        raise ValueError(f"num_items must be at least {len(SPLITS)} (one item per split), got {num_items}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER).is_file():
        raise ValueError(f"output_dir {str(output_dir)!r} is a non-empty folder that make_catalog did not create "
                         f"(no {MARKER} marker in it): refusing to overwrite it; pass a new or empty folder.")


def split_sizes(num_items: int, splits) -> list:
    """Items per split: the fractions of num_items rounded by largest remainder, at least one per split."""
    exact = [num_items * float(fraction) for fraction in splits]
    sizes = [int(value) for value in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda k: (-(exact[k] - sizes[k]), k))
    for k in by_remainder[: num_items - sum(sizes)]:
        sizes[k] += 1
    for k in range(len(sizes)):  # a tiny split still gets one item, taken from the largest
        if sizes[k] == 0:
            sizes[max(range(len(sizes)), key=lambda j: sizes[j])] -= 1
            sizes[k] = 1
    return sizes


def make_catalog(output_dir, num_items: int = 3000, image_size: int = 64, seed: int = 0,
                 splits=(0.8, 0.1, 0.1)) -> Path:
    """Draws `num_items` products into an imagefolder catalog at `output_dir` and returns its path.

    Items are split in sampling order: the first share goes to train, the next to validation, the rest to test.
    """
    output_dir = Path(output_dir)
    _check_arguments(output_dir, num_items, image_size, seed, splits)
    settings = f"moda-synthetic v{VERSION} num_items={num_items} image_size={image_size} seed={seed} " \
               f"splits={tuple(float(f) for f in splits)}"
    if (output_dir / MARKER).is_file() and (output_dir / MARKER).read_text() == settings:
        return output_dir  # already drawn with these settings
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    # The marker goes first, so that a run cut short leaves a folder the next run may replace; it holds the
    # settings only once every file is written.
    (output_dir / MARKER).write_text("incomplete")
    rng = random.Random(seed)
    rows = [_sample_item(rng, index) for index in range(num_items)]
    start = 0
    for split, size in zip(SPLITS, split_sizes(num_items, splits)):
        items = rows[start:start + size]
        start += size
        images_dir = output_dir / split / "images"
        images_dir.mkdir(parents=True)
        for row in items:
            row["file_name"] = f"images/{row['ProductId']}.png"
            item_rng = random.Random(f"{seed}-{row['ProductId']}")
            draw_item(row, image_size, item_rng).save(output_dir / split / row["file_name"])
        with open(output_dir / split / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(items)
    (output_dir / MARKER).write_text(settings)
    return output_dir


def draw_examples(output_dir, num_items: int = 4, image_size: int = 64, seed: int = 0) -> list:
    """Draws `num_items` products of different types, as make_catalog draws them, into `output_dir` (created if
    needed; files of the same names are replaced) as <caption in lower case, dashes>.png; returns their paths.

    The demo's example photos: the app shows them, and `moda space` ships them with a Space."""
    if isinstance(num_items, bool) or not isinstance(num_items, int) or not 1 <= num_items <= len(PRODUCTS):
        raise ValueError(f"num_items must be an integer from 1 to {len(PRODUCTS)} (one item per product type), "
                         f"got {num_items!r}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng, rows, index = random.Random(seed), {}, 0
    while len(rows) < num_items:  # the first item of each product type drawn, until there are enough
        row = _sample_item(rng, index)
        rows.setdefault(row["ProductType"], row)
        index += 1
    paths = []
    for row in rows.values():
        name = "-".join(row["caption"].replace("-", " ").lower().split())
        paths.append(output_dir / f"{name}.png")
        draw_item(row, image_size, random.Random(f"{seed}-{row['ProductId']}")).save(paths[-1])
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moda.data.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--num_items", type=int, default=3000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = make_catalog(args.output_dir, args.num_items, args.image_size, args.seed)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    counts = {split: sum(1 for _ in (path / split / "images").iterdir()) for split in SPLITS}
    print(f"synthetic catalog at {path}: {sum(counts.values())} items of {args.image_size}x{args.image_size} px, "
          + ", ".join(f"{split} {count}" for split, count in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
