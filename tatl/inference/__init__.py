"""Prediction for new images with a finished run or its ONNX export: masks, maps, overlays, ONNX export."""
