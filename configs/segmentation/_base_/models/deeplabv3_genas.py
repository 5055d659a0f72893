# DeepLabv3 (ASPPHead + FCNHead auxiliary) on a timm backbone from backbones/, as MMSeg's deeplabv3_r50-d8.py
# with only the backbone replaced (paper Table 4). The per-model configs set backbone.model_name and the heads'
# in_channels (the timm model's feature_info channels of levels 3 and 2).
#
# Output stride 32 (the default here): the DARTS network cannot be dilated without changing what its ImageNet
# weights compute (see segmentation/backbone.py), so ASPP reads the last level (stride 32) and the auxiliary
# FCN head the previous one (stride 16). ASPP rates follow DeepLabv3's rate x output stride = const rule:
# (1, 12, 24, 36) at stride 8 -> (1, 3, 6, 9) at stride 32. The *_os16_* configs switch to stride 16.
#
# Input: the GeNAS / DARTS ImageNet models were trained on RGB in [0, 1] with no mean/std, hence mean 0, std 255.
custom_imports = dict(imports=['segmentation.backbone'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN by MMEngine in single-process runs
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[0.0, 0.0, 0.0],
    std=[255.0, 255.0, 255.0],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='GeNASBackbone',
        model_name=None,  # set by each model's config
        out_indices=(0, 1, 2, 3),
        weights='',  # path of the model's ImageNet checkpoint (backbones/train_imagenet.py); '' = random init
        frozen_stages=-1,  # MMSeg's convention: -1 nothing; k: feature level k and all before (backbones/freeze.py)
        norm_eval=False,
        channels_last=False),  # True (or segmentation/train.py --channels-last): NHWC; measured slower on an H200 (0.47x)
    decode_head=dict(
        type='ASPPHead',
        in_channels=None,  # channels of level 3
        in_index=3,
        channels=512,
        dilations=(1, 3, 6, 9),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=None,  # channels of level 2
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
