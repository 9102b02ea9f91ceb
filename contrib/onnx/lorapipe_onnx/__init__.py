"""ONNX export for lorapipe: the merged model as ``model.onnx``, verified with onnxruntime."""
