// Package minicpmv is the MiniCPM-Llama3-V-2.5 family (model.family
// minicpmv25), the model the paper's released adapters and predictors were
// trained on: a SigLIP-so400m vision tower in Idefics2 style (patch 14,
// variable patch grids with bucketed position ids), a resampler of learned
// queries with 2-D sin-cos positions, and the Llama-3-8B text model.
//
// This file set holds the pure-Go parts that must match the reference's
// float32 arithmetic exactly (position ids, the sin-cos table); see
// scripts/ref_minicpmv.py for the independent float64 reference of the
// whole forward pass.
package minicpmv
