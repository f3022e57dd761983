"""Every class-label set of the zoo, defined once (a low-level module: it imports nothing of the package).

The DataModules, the registry's entries, inference and the 2019 viewpoint study read their class names
from here. :func:`named_labels` resolves the names a registry entry or a config may use instead of a list.

Example:
    >>> SMALLNORB_LABELS
    ('animal', 'human', 'airplane', 'truck', 'car')
    >>> named_labels("sst5")[:2]
    ['very negative', 'negative']
    >>> len(named_labels("cifar100"))
    100
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = [
    "BBC_LABELS",
    "BINARY_SENTIMENT_LABELS",
    "CIFAR100_LABELS",
    "CIFAR10_LABELS",
    "IMDB_LABELS",
    "LABEL_SETS",
    "SMALLNORB_LABELS",
    "SST2_LABELS",
    "SST5_LABELS",
    "imagenet_labels",
    "named_labels",
]

# CIFAR-10 classes 0..9 (the order of ``batches.meta``'s ``label_names``).
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine classes 0..99 (the order of ``meta``'s ``fine_label_names``).
CIFAR100_LABELS = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)
# SST-5 fine-grained sentiment 0..4 and the binary sentiment of SST-2 (and the 2022 IMDB head).
SST5_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")
BINARY_SENTIMENT_LABELS = ("negative", "positive")
SST2_LABELS = BINARY_SENTIMENT_LABELS
# IMDB's folder names (``aclImdb/{train,test}/{neg,pos}``), class 0 = neg.
IMDB_LABELS = ("neg", "pos")
# smallNORB categories 0..4.
SMALLNORB_LABELS = ("animal", "human", "airplane", "truck", "car")
# BBC News topics 0..4 (the corpus's folder names, sorted).
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")

# The named sets a registry entry or a config may give as ``labels: <name>``.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_LABELS,
    "cifar100": CIFAR100_LABELS,
    "sst5": SST5_LABELS,
    "sst2": SST2_LABELS,
    "imdb": IMDB_LABELS,
    "smallnorb": SMALLNORB_LABELS,
    "bbc": BBC_LABELS,
}


def imagenet_labels() -> list[str]:
    """ImageNet-1k class descriptions ("tench, Tinca tinca", …) in class-index order.

    Read from the data files bundled with timm (directly: importing timm takes seconds).

    Raises:
        ImportError: timm is not installed.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("labels 'imagenet-1k': the names ship with timm; install it (pip install timm)")
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    try:
        synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
        lemmas = dict(
            line.split("\t", 1)
            for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
        )
        return [lemmas[s].strip() for s in synsets]
    except (OSError, KeyError, ValueError):  # layout changed: use timm's API
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_descriptions(as_dict=False))


def named_labels(name: str) -> list[str]:
    """Resolve a named label set (:data:`LABEL_SETS`, or ``"imagenet-1k"`` from timm's class info).

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if name == "imagenet-1k":
        return imagenet_labels()
    if name in LABEL_SETS:
        return list(LABEL_SETS[name])
    raise KeyError(f"labels: unknown named label set {name!r}; known: imagenet-1k, {', '.join(LABEL_SETS)}")
