// --dump DIR: writes a case's inputs and every output (reference and each backend) as NumPy .npy
// files plus manifest.json, so any result can be checked by an independent program:
//   DIR/<case index>_<repro with ':' -> '_'>_<dist>/manifest.json, x.npy, ..., ref64.y.npy,
//   <backend>.y.npy
// Arrays are stored in memory order with their logical shape: x/y/dy/dx as (N, C, H, W) for
// nchw and (N, H, W, C) for nhwc; f32 as '<f4', f16 as '<f2', bf16 as raw bits '<u2' (NumPy has
// no bfloat16; the manifest says "bf16_bits": widen with (bits.astype(uint32) <<
// 16).view(float32)). Reference outputs are fp64 ('<f8'), before rounding to the dtype.
#pragma once

#include <string>
#include <vector>

#include "agreement.hpp"
#include "case_data.hpp"

namespace nb {

/// Writes one .npy file (format version 1.0). Throws std::runtime_error when it cannot write.
void write_npy(const std::string& path, const std::string& descr,
               const std::vector<std::int64_t>& shape, const void* data, std::size_t bytes);

struct DumpedBackend {
  std::string backend;
  const CaseOutputs* outputs;
  const Agreement* agreement;
};

/// Writes the case directory described above; returns its path. Throws std::runtime_error.
std::string dump_case(const std::string& dir, int case_index, const Problem& p, Distribution dist,
                      const CaseInputs& in, const ref::Tensors& ref,
                      const std::vector<DumpedBackend>& backends);

}  // namespace nb
