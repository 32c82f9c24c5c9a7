// The flat view of an image against the unpacked tree (tests land with FlatTree).
