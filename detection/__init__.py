"""RetinaNet (Detectron2) with GeNAS / any timm backbone: backbone.py, config.py, data.py, train_net.py.

Importing the package is cheap; its modules import Detectron2.
"""
