"""alfa-tf: ALFA (Baik et al., NeurIPS 2020) in TensorFlow 2 for Meta-Dataset."""
import setuptools

setuptools.setup(
    name="alfa-tf",
    version="0.1.0",
    description=("Meta-Learning with Adaptive Hyperparameters (ALFA), fo-MAML and "
                 "fo-Proto-MAML for Meta-Dataset, in TensorFlow 2 / Keras."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["alfa_tf", "alfa_tf.*",
                                               "meta_dataset_ext", "meta_dataset_ext.*"])
    + ["meta_dataset_ext.configs", "meta_dataset_ext.configs.best"],
    # The gin configs live in gin/ (the paths users type from a checkout) and are installed
    # as meta_dataset_ext/configs/ (found by meta_dataset_ext.config_files), the tuned ones
    # of gin/best/ as meta_dataset_ext/configs/best/.
    package_dir={"meta_dataset_ext.configs": "gin", "meta_dataset_ext.configs.best": "gin/best"},
    package_data={"meta_dataset_ext.configs": ["*.gin"],
                  "meta_dataset_ext.configs.best": ["*.gin"]},
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.15",
        "tensorboard",
        "gin-config>=0.5",
        "tensorflow-datasets>=4.9",
        "numpy",
        "absl-py",
        "matplotlib",
        "pillow",
        "tqdm",
        "google-crc32c",
    ],
    extras_require={"test": ["pytest>=7"]},
)
