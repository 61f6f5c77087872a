"""The registry of datasets: names, aliases, sizes, class names, known checksums and sources."""

from __future__ import annotations

from dataclasses import dataclass, field

from mortal.data.common import DataError

# The four idx files of MNIST and Fashion-MNIST, under their canonical names (without .gz).
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR_PYTHON_TAR = "cifar-10-python.tar.gz"
CIFAR_PYTHON_DIR = "cifar-10-batches-py"
CIFAR_PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_JPEG_TAR = "cifar10-jpeg.tar.gz"
CIFAR_JPEG_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"
CIFAR_JPEG_NOTE = "CIFAR-10 (JPEG copy)"


@dataclass(frozen=True, eq=False)
class Spec:
    """What the data layer knows about one dataset."""

    name: str
    title: str
    kind: str                      # "idx" or "cifar"
    classes: tuple[str, ...]
    shape: tuple[int, int, int]    # C, H, W
    n_train: int
    n_test: int
    folders: tuple[str, ...]       # sub-folder names under $MORTAL_DATA and the cache
    formats: str                   # for `mortal data list`
    sha256: dict[str, str] = field(default_factory=dict)  # idx stem -> sha256 of raw bytes
    urls: tuple[str, ...] = ()     # idx: mirror base URLs; cifar: archive URLs
    apt_package: str = ""


MNIST = Spec(
    name="mnist",
    title="MNIST handwritten digits",
    kind="idx",
    classes=tuple(str(i) for i in range(10)),
    shape=(1, 28, 28),
    n_train=60000,
    n_test=10000,
    folders=("mnist",),
    formats="idx (.gz or raw)",
    sha256={
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = Spec(
    name="fashion-mnist",
    title="Fashion-MNIST clothing images",
    kind="idx",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    shape=(1, 28, 28),
    n_train=60000,
    n_test=10000,
    folders=("fashion-mnist", "fashion_mnist"),
    formats="idx (.gz or raw)",
    sha256={
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    apt_package="dataset-fashion-mnist",
)

CIFAR10 = Spec(
    name="cifar10",
    title="CIFAR-10 natural images",
    kind="cifar",
    classes=CIFAR10_CLASSES,
    shape=(3, 32, 32),
    n_train=50000,
    n_test=10000,
    folders=("cifar10", CIFAR_PYTHON_DIR, "cifar10-jpeg"),
    formats=f"{CIFAR_PYTHON_TAR}, {CIFAR_PYTHON_DIR}/, image folders (train/ test/ or .tar.gz)",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)

DATASETS: dict[str, Spec] = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10)}

# Keys are names with case, "-", "_", " " and "." removed.
_ALIASES = {
    "mnist": "mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "fashion": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar": "cifar10",
    "cifar10jpeg": "cifar10",
    "cifar10jpg": "cifar10",
    "cifar10python": "cifar10",
    "cifar10batchespy": "cifar10",
}


def canonical_name(name: str) -> str:
    """Map a dataset name or alias ("fmnist", "CIFAR-10", ...) to its canonical name."""
    key = "".join(ch for ch in str(name).lower() if ch not in "-_ .")
    if key in _ALIASES:
        return _ALIASES[key]
    raise DataError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)} "
                    "(aliases such as fashion_mnist, fmnist, cifar-10 also work); run "
                    "`mortal data list` to see them and where they were found.")


def get_spec(name: str) -> Spec:
    """The Spec for a dataset name or alias; DataError for an unknown name."""
    return DATASETS[canonical_name(name)]
