"Data layer: LVIS annotations, repeat-factor sampling, the detection dataset, the synthetic LVIS set, data paths."
from .lvis import (LVISFormatError, DatasetError, LVISDict, load_lvis, ClassStatistics, class_statistics,
                   frequency_group, image_file_name, image_class_pairs, find_shared_file, segmentation_problem,
                   check_train_set, filter_images_without_annotations, with_train_frequencies, check_train_val)
from .sampling import class_repeat_factors, repeat_factors, RepeatFactorSampler
from .dataset import (LVISDetection, detection_collate, decode_segmentation, resized_size, ImageReadError,
                      image_path, open_image, check_images, ImageCheckReport)
from .synthetic import SyntheticLVIS, make_synthetic_lvis, class_appearance, zipf_counts
from .source import DataSource, DATA_KEYS, resolve_data, synthetic_root, data_root, project_root
