from setuptools import find_packages, setup

setup(
    name="nar_refine",
    version="0.2.0",  # also nar_refine.__version__ and CHANGELOG.md
    description=(
        "fairseq plugin: non-autoregressive NMT with latent variables and iterative "
        "refinement (discrete refinement, LaNMT delta inference, score/energy inference)"
    ),
    packages=find_packages(include=["nar_refine", "nar_refine.*"]),
    python_requires=">=3.9",
    # torch and fairseq are installed by scripts/setup.sh (pinned CPU torch, fairseq-fixed).
    install_requires=["sacrebleu>=2.0", "numpy"],
    extras_require={"test": ["pytest"], "plots": ["matplotlib"]},
)
