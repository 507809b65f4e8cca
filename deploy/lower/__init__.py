"""From a QAT model to the integer IR: the IR and its builder, the lowering, TFLite's fixed-point arithmetic and the numpy integer reference."""
