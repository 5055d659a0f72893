"""RetinaNet (Detectron2) with GeNAS / any timm backbone: backbone.py, config.py, data.py, train_net.py."""
import warnings

from genas.cost import import_fvcore_nn

# fvcore.nn (imported by detectron2.engine) and detectron2.modeling.box_regression call torch.jit.script at import,
# which prints torch's deprecation FutureWarning at every CLI start: import them here with that one warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    import_fvcore_nn()
    import detectron2.engine  # noqa: E402,F401
    import detectron2.modeling  # noqa: E402,F401
