// Declares every fastvae operator once; the devices register implementations
// (cpu/*.cpp, cuda/*.cpp) and the dispatcher picks one by the inputs' device.
#include <torch/library.h>

#include "lstm_cell.h"

namespace fastvae {

void check_lstm_cell_args(const at::Tensor& gates, const at::Tensor& c_prev) {
  TORCH_CHECK(gates.dim() == 2, "fastvae.lstm_cell: gates must be 2-D [batch, 4*hidden], got shape ",
              gates.sizes());
  TORCH_CHECK(c_prev.dim() == 2, "fastvae.lstm_cell: c_prev must be 2-D [batch, hidden], got shape ",
              c_prev.sizes());
  TORCH_CHECK(gates.size(0) == c_prev.size(0), "fastvae.lstm_cell: batch sizes differ: gates has ",
              gates.size(0), " rows, c_prev has ", c_prev.size(0));
  TORCH_CHECK(gates.size(1) == 4 * c_prev.size(1), "fastvae.lstm_cell: gates must have 4*hidden = ",
              4 * c_prev.size(1), " columns for hidden size ", c_prev.size(1), ", got ", gates.size(1));
  TORCH_CHECK(gates.scalar_type() == c_prev.scalar_type(), "fastvae.lstm_cell: gates (",
              gates.scalar_type(), ") and c_prev (", c_prev.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(at::isFloatingType(gates.scalar_type()),
              "fastvae.lstm_cell: expected floating-point tensors, got ", gates.scalar_type());
  TORCH_CHECK(gates.device() == c_prev.device(), "fastvae.lstm_cell: gates is on ", gates.device(),
              " but c_prev is on ", c_prev.device(), "; move both to the same device");
}

}  // namespace fastvae

TORCH_LIBRARY(fastvae, m) {
  m.def("lstm_cell_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor)");
}
