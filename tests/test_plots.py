"""The pictures: each function writes a real PNG of a sensible size."""

import numpy as np
from PIL import Image

from tinyvgg import plots
from tinyvgg.evaluate import confusion_matrix
from tinyvgg.models import vgg


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        return np.asarray(im.convert("L"))


def test_history_filters_feature_maps_and_confusion(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "val_loss": 2.1 / e,
                "val_acc": 0.28 * e} for e in (1, 2, 3)]
    a = _png(plots.plot_history(history, tmp_path / "curves.png"))
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 8, hidden=16, init="glorot")
    b = _png(plots.plot_filters(model.layers[0].params["weight"], tmp_path / "filters.png"))
    image = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    c = _png(plots.plot_feature_maps(model, image, tmp_path / "maps.png", max_maps=4))
    cm = confusion_matrix([0, 1, 1, 2, 3, 3], [0, 1, 2, 2, 3, 0], 4)
    assert cm.sum() == 6 and np.trace(cm) == 4 and cm[2, 1] == 1  # row true 2, predicted 1
    d = _png(plots.plot_confusion_matrix(cm, ["a", "b", "c", "d"], tmp_path / "cm.png"))
    for img in (a, b, c, d):
        assert img.std() > 5  # not a blank canvas
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files
