#include "trainer.h"

#include "error.h"

int wan_train_main(const wan_train_opts *opts) {
    (void)opts;
    return wan_fail(WAN_ERR_RUNTIME, "training is not implemented yet");
}
