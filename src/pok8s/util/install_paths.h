// Where pok8s finds its data (share/pok8s: recipes, framework units, default stages) and its
// node binaries (pok8s-init, pok8s-agent), installed or in a build tree.
#pragma once

#include "pok8s/util/file.h"

namespace pok8s::util {

// $POK8S_DATA_DIR, else <exe>/../share/pok8s, else the source tree's share/pok8s.
Path data_dir();

// The web builder's static files: $POK8S_WEB_DIR, else data_dir()/web (installed), else the
// source tree's web/.
Path web_dir();

// The static node binary `name`: $POK8S_LIBEXEC_DIR/name, else next to the running pok8s,
// else <exe>/../lib/pok8s/name. Throws kNotFound naming the places it looked.
Path node_binary(std::string_view name);

}  // namespace pok8s::util
