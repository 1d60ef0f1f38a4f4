"""The README model table's weights column: a link where the authors publish a checkpoint, 'none' elsewhere."""
import timm

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.report.model_table import weights_link


def test_weights_column_links_the_authors_checkpoints_only():
    inline = weights_link(timm.models.get_pretrained_cfg("inline_deit_tiny_patch16_224").to_dict())
    assert inline.startswith("[authors'](https://cloud.tsinghua.edu.cn/") and inline.endswith("converted on load")
    assert "drive.google.com" in weights_link(timm.models.get_pretrained_cfg("qtvit_1").to_dict())
    for name in ("qtvit_4", "linear_deit_tiny_patch16_224", "softmax_deit_tiny_patch16_224"):
        assert weights_link(timm.models.get_pretrained_cfg(name).to_dict()) == "none"
