"""The built-in shapes world as a user of the core: its own pretrained CLIP (``raymmft-world``,
shipped in the package), its held-out metrics, its NegLabel corpora, and the zero-shot vs FLYP vs
CMA comparison.

- ``raymmft.world.pretrain``: ``pretrain_world`` and the record of what it made;
- ``raymmft.world.metrics``: ``world_metrics`` on held-out world images, through the one evaluator;
- ``raymmft.world.corpus``: the corpora ``world``, ``world+wordnet`` and ``world+wordnet:N``;
- ``raymmft.world.compare``: the comparison's config and runs (``raymmft compare-world``).

Nothing in the core imports this package; the world's images themselves are a dataset of the core
(``builtin:shapes``, ``raymmft.data.shapes``).
"""

from pathlib import Path

WORLD_ARCH = "raymmft-world"
WORLD_TAG = "raymmft-world"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "assets" / "pretrained"
WORLD_WEIGHTS = PRETRAINED_DIR / f"{WORLD_TAG}.pt"
WORLD_METRICS = PRETRAINED_DIR / f"{WORLD_TAG}.json"
