"""Names of the GDN scan custom op, shared by the torch op, its ONNX translation and the TensorRT plugin.

A leaf module (no imports) so the torch op and the ONNX translation do not import each other.
"""

PLUGIN_DOMAIN = "sanawm"  # torch.library namespace = ONNX domain = TensorRT plugin namespace
PLUGIN_NAME = "gdn_scan"
PLUGIN_VERSION = "1"
