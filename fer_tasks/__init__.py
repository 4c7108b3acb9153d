"""FER training pipeline: DVC stages (stages/), shared libraries (lib/), user tools (tools/)."""

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
