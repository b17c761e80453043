"""Install `verl_meds` next to stock verl: ``pip install -e .`` (see README for the torch pin)."""

from setuptools import find_packages, setup

setup(
    name="verl_meds",
    version="0.1.0",
    description="MEDS (Memory-Enhanced Dynamic reward Shaping, arXiv 2604.11297) as a verl extension",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_meds", "verl_meds.*", "data_prep", "data_prep.*"]),
    package_data={"verl_meds": ["py.typed"], "verl_meds.verl": ["config/*.yaml"]},
    install_requires=[
        # torch is a dependency but is installed first, pinned, by the README (a CPU wheel here, CUDA on clusters).
        "torch>=2.6",
        "numpy",
        "scipy",
        # grading and answer keys (verl_meds.grading, verl_meds.answer.answer_key) parse answers with math-verify.
        "math-verify>=0.7",
    ],
    extras_require={
        "verl": [
            "verl[verl-core]>=0.9.1,<0.10",
            "transformers",
            "tokenizers",
            "datasets",
            "pyarrow",
            "hydra-core",
            "omegaconf",
            "tqdm",
        ],
        # Cluster-label agreement (verl_meds.analysis, scikit-learn) and the contrib HDBSCAN references
        # (verl_meds.clustering.fit_labels_reference, verl_meds.authors); the training path needs neither.
        "analysis": ["scikit-learn>=1.3", "hdbscan>=0.8.33"],
        "plots": ["matplotlib"],
        "test": ["pytest", "hypothesis", "scikit-learn>=1.3", "hdbscan>=0.8.33", "ruff"],
        # The vLLM that verl 0.9.1's own [vllm] extra installs (0.24.0, with torch 2.11.0; recipes/README.md,
        # "Multi-node"). verl's code accepts vLLM >= 0.18, but 0.18 and 0.19 need transformers < 5, which verl
        # 0.9.1 does not take; releases after 0.24 are untested with it.
        "vllm": ["vllm>=0.24.0,<0.25"],
    },
    entry_points={
        "verl.plugins": ["meds = verl_meds.verl.autoload"],
        "console_scripts": ["verl-meds-eval = verl_meds.eval.run:main"],
    },
)
