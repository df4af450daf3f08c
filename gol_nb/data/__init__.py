"Data layer: LVIS annotations, repeat-factor sampling, the detection dataset and the synthetic LVIS set."
from .lvis import (LVISFormatError, LVISDict, load_lvis, ClassStatistics, class_statistics,
                   frequency_group, image_file_name, image_class_pairs, find_shared_file)
from .sampling import class_repeat_factors, repeat_factors, RepeatFactorSampler
from .dataset import LVISDetection, detection_collate, decode_segmentation, resized_size
from .synthetic import SyntheticLVIS, make_synthetic_lvis, class_appearance, zipf_counts
