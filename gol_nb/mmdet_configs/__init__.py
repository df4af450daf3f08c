"""mmdetection 3 configs of the paper's experiments, derived from mmdet's own LVIS configs (`mmdet::` bases).

The files are read with `mmengine.Config.fromfile`, never imported; `gol_nb.mmdet_plugin.PAPER_CONFIGS` lists them.
"""
