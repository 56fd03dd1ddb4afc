"""mmjax: multimodal LLMs that see images at many resolutions, in JAX/Flax."""
import setuptools

# Pinned to the versions the test suite runs against (see README, "Tests").
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "chex==0.1.92",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",
    "pillow==13.0.0",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "jaxtyping==0.3.11",
    "tokenizers==0.23.3",
    "jinja2==3.1.6",  # Checkpoints' chat templates, rendered in its sandbox.
    "importlib_resources==7.1.0",  # etils.epath needs it for TFDS builders defined in packages.
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
]

# Parity references. torch must be the CPU build: never add timm or torchvision here, they pull a
# multi-GB CUDA torch.
TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",  # Two workers: compiling and running overlap on a 2-core CPU.
    "hypothesis==6.170.15",
    "torch==2.13.0",
    "transformers==5.23.0",
]

setuptools.setup(
    name="mmjax",
    version="0.1.0",
    description="Multimodal LLMs with mixture-of-resolution and dynamic-resolution vision in JAX/Flax",
    packages=setuptools.find_packages(include=["mmjax", "mmjax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "bench": ["matplotlib==3.11.2"]},
)
