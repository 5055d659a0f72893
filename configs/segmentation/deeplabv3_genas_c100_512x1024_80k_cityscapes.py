# DeepLabv3 with the GeNAS (flatness, CIFAR-100 search) backbone on Cityscapes: 512x1024 crops, 80k iterations,
# 4 GPUs x 2 images (paper Table 4: 72.58 mIoU). Only the backbone differs from MMSeg's DeepLabv3 R50 recipe.
#   torchrun --nproc_per_node 4 segmentation/train.py configs/segmentation/<this file> --launcher pytorch \
#       --data-root <cityscapes> --cfg-options model.backbone.weights=<ImageNet checkpoint of genas_c100>
# The heads' in_channels are the backbone's level-3 / level-2 channels:
#   timm.create_model('genas_c100', features_only=True).feature_info.channels() == [46, 184, 368, 736]
_base_ = [
    './_base_/models/deeplabv3_genas.py', './_base_/datasets/cityscapes_512x1024.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(model_name='genas_c100'),
    decode_head=dict(in_channels=736),
    auxiliary_head=dict(in_channels=368))
