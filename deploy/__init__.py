"""Deploy: ONNX export, compression, the model zoo and the torch-free embedded runtime."""
