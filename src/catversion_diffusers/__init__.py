"""catversion-diffusers: CatVersion personalization for diffusers pipelines."""

__version__ = "0.1.0"
