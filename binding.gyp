# For tools that expect node-gyp (`node-gyp rebuild`, prebuildify without --node-gyp).
# The build of record is CMakeLists.txt: this target only runs cmake-js through the same
# shim prebuildify uses, which writes build/Release/wan_native.node.
{
  "targets": [
    {
      "target_name": "wan_native_cmake",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_js_build",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["build/Release/wan_native.node"],
          "action": ["node", "scripts/cmake-js-shim.js"]
        }
      ]
    }
  ]
}
