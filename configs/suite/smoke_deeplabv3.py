# DeepLabv3 recipe shrunk for configs/suite/smoke.yaml: the one cityscapes_tiny frame (val split) at 64x128,
# 2 iterations of batch 2 (ASPP's image-pooling BatchNorm needs more than one value per channel), then the final
# checkpoint through segmentation/test.py. data_root comes from --data-root; backbone and heads from the suite.
_base_ = '../segmentation/deeplabv3_genas_c100_512x1024_80k_cityscapes.py'
crop_size = (64, 128)
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
split = dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_prefix=split, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_prefix=split, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=2, by_epoch=False)]
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0)
