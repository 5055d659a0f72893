"""GeNAS / DARTS-space cells as timm models.

``import backbones`` registers the models with timm; then they are created like any timm model::

    import timm, backbones
    model = timm.create_model("genas_c100", num_classes=1000, drop_path_rate=0.1)
    feats = timm.create_model("genas_c100", features_only=True, out_indices=(1, 2, 3))  # strides 8/16/32
    mine = timm.create_model("darts_imagenet", genotype="out/search/result.json", C=46)  # a fresh search result
    cifar = timm.create_model("darts_cifar", genotype="genas_flatness_cifar100", num_classes=100)
    # local weights (reference / DDP checkpoints too); for a checkpoint trained on K classes add num_classes=K
    # to the overlay so timm keeps its classifier
    local = timm.create_model("genas_c100", pretrained=True, pretrained_cfg_overlay=dict(file="model_best.pth.tar"))

``timm.list_models("genas*")`` lists the GeNAS cells; :data:`backbones.darts_net.VARIANTS` lists every named
model with its cell, width and the paper's size. ``python -m backbones.summary`` prints measured sizes,
``python backbones/train_imagenet.py`` trains one from scratch and ``python -m backbones.export`` writes one in
timm's hub format (``timm.create_model("local-dir:hub/genas_c100", pretrained=True)``, ``hf-hub:`` once uploaded).
``darts_imagenet`` / ``darts_cifar`` without ``genotype=`` build :data:`backbones.darts_net.DEFAULT_GENOTYPE`.
"""
from backbones.darts_net import DEFAULT_GENOTYPE, VARIANTS, NetworkCIFAR, NetworkImageNet, checkpoint_filter_fn

__all__ = ["VARIANTS", "DEFAULT_GENOTYPE", "NetworkCIFAR", "NetworkImageNet", "checkpoint_filter_fn"]
