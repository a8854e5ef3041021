"""Stage 3, export: a trained run -> an ollama-ready folder (pipeline): the merged model, GGUF
files made with llama.cpp (llamacpp, gguf), the Modelfile (modelfile) and a README (readme).
Imports core, data and train."""
