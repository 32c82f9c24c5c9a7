// pok8s-init: PID 1 of the initramfs pok8s builds. All of it is in pok8s::node::run_init.
#include "pok8s/node/init.h"

int main() {
  return pok8s::node::run_init();
}
