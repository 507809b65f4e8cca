/* conv2d for 1x1 kernels without padding, Cortex-M DSP set: the general kernel of conv2d.c (its gather
 * finds no padding taps and copies one pixel per patch, four values per word). */
#include "../kernels.h"

void smpq_conv2d_1x1(const smpq_op_args *a) { smpq_conv2d(a); }
