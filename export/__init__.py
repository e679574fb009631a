"""What a person takes home: the train.py script and its bundle (model.py, the loop, the data
readers), and ONNX. It sits above runtime/, because a bundle ships the runtime's own loop and data
code and an ONNX export builds the model the runtime trains."""
