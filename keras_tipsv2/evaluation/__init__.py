"""Evaluation: zero-shot segmentation benchmarks, mIoU, retrieval, pictures."""

from keras_tipsv2.evaluation.datasets import ADE20K_CLASSES
from keras_tipsv2.evaluation.datasets import CONTEXT59_CLASSES
from keras_tipsv2.evaluation.datasets import VOC_CLASSES
from keras_tipsv2.evaluation.datasets import SegmentationDataset
from keras_tipsv2.evaluation.datasets import load_segmentation_dataset
from keras_tipsv2.evaluation.miou import SegmentationScore
from keras_tipsv2.evaluation.miou import class_iou
from keras_tipsv2.evaluation.miou import confusion_matrix
from keras_tipsv2.evaluation.miou import mean_iou
from keras_tipsv2.evaluation.pca import pca_components
from keras_tipsv2.evaluation.pca import pca_rgb
from keras_tipsv2.evaluation.pictures import pca_picture
from keras_tipsv2.evaluation.pictures import segmentation_picture
from keras_tipsv2.evaluation.retrieval import classification_accuracy
from keras_tipsv2.evaluation.retrieval import retrieval_recall
from keras_tipsv2.evaluation.segmentation import evaluate_segmentation
from keras_tipsv2.evaluation.segmentation import iou_table
from keras_tipsv2.evaluation.segmentation import set_dataset_classes
