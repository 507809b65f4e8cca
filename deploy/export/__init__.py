"""The integer IR in other formats: ONNX, TFLite, the packed .smpq blob and model_data.c; TFLite Micro, the TFLite importer and MLPerf Tiny."""
