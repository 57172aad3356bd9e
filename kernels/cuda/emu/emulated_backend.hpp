// The `cuda` backend's kernels compiled with the host compiler and run in the SIMT emulator
// (simt.hpp): an nb::Implementation for tests, not registered (normbench never lists it).
#pragma once

#include <memory>

#include "suites/core/registry.hpp"

namespace nb_cuda_emu {

/// Emulated device: sm_count SMs (it sets the backward's grid, so a small number makes blocks
/// loop over several rows) and the sm_90 shared-memory limit.
std::shared_ptr<nb::Implementation> make_emulated_cuda(int sm_count = 3);

/// Whether the backend implements the method at all (the registered set of the real backend).
bool emulated_implements(nb::Method m);

}  // namespace nb_cuda_emu
