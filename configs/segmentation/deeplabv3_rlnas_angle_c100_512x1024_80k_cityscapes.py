# DeepLabv3 with the angle-searched CIFAR-100 cell (RLNAS metric, 5.4M / 0.61G as Table 4's RLNAS row;
# paper: 70.84 mIoU) backbone
# on Cityscapes, as deeplabv3_genas_c100 (512x1024 crops, 80k iterations).
# Heads' in_channels: timm.create_model('rlnas_angle_c100', features_only=True).feature_info.channels()[3], [2]
_base_ = './deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
model = dict(
    backbone=dict(model_name='rlnas_angle_c100'),
    decode_head=dict(in_channels=736),
    auxiliary_head=dict(in_channels=368))
