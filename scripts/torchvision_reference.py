"""torchvision's ImageNet transforms, as the seed tutorial writes them: the one copy that the
benchmarks (scripts/) and the Python references of the tests (tests/python/) build on.

    eval_transform()   Resize(256) + CenterCrop(224) + ToTensor + Normalize(MEAN, STD)
    train_transform()  RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize(MEAN, STD)

`size` is the model's input size; the evaluation resize keeps the tutorial's 256:224 ratio
(round(256 * size / 224)), so the defaults are exactly the tutorial's transforms.

Scripts in scripts/ import it directly; files elsewhere put this folder on sys.path first:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
torchvision is imported when a transform is built, not when this module is.
"""

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def eval_transform(size=224):
    """torchvision's evaluation transform: resize the shorter side, centre crop, normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(round(256 * size / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def train_transform(size=224):
    """torchvision's training augmentation of the tutorial: random resized crop and flip."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
