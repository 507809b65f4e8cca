/* reshape: the bytes are unchanged (NHWC order); copy unless input and output share the region. */
#include <string.h>

#include "kernels.h"

void smpq_reshape(const smpq_op_args *a) {
    if ((const int8_t *)a->out != a->in) memmove(a->out, a->in, a->size);
}
