"""Training CatVersion concepts: ``CatVersionTrainer`` and its pieces (also used by ``examples/train_catversion.py``).

    from catversion_diffusers.training import CatVersionTrainer, CatVersionTrainingConfig

    config = CatVersionTrainingConfig(class_word="dog", output_dir="my-dog")
    result = CatVersionTrainer(pipe_or_model_path, config).train("./dog_photos")
    pipe.load_catversion(result.state)   # or result.path (output_dir/catversion.safetensors)

Needs ``accelerate`` (``pip install "catversion-diffusers[training]"``). See docs/training.md.
"""

from .config import (
    AUTHORS_EFFECTIVE_LEARNING_RATE,
    PAPER_LEARNING_RATE,
    CatVersionTrainingConfig,
    parse_residual_layers,
)
from .data import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    CatVersionDataError,
    TrainingImages,
    load_training_images,
    make_image_grid,
    prompt_templates,
    training_prompts,
)
from .text_cache import TrainingTextEncoder
from .trainer import (
    Batch,
    CatVersionTrainer,
    CatVersionTrainingError,
    CatVersionTrainingResult,
    create_accelerator,
    find_checkpoint,
    list_checkpoints,
    load_training_pipeline,
    train_catversion,
)

__all__ = [
    "AUTHORS_EFFECTIVE_LEARNING_RATE",
    "PAPER_LEARNING_RATE",
    "Batch",
    "CatVersionDataError",
    "CatVersionTrainer",
    "CatVersionTrainingConfig",
    "CatVersionTrainingError",
    "CatVersionTrainingResult",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "TrainingImages",
    "TrainingTextEncoder",
    "create_accelerator",
    "find_checkpoint",
    "list_checkpoints",
    "load_training_images",
    "load_training_pipeline",
    "make_image_grid",
    "parse_residual_layers",
    "prompt_templates",
    "train_catversion",
    "training_prompts",
]
