// A ComfyUI workflow (WanVideoWrapper + VideoHelperSuite nodes, API or UI format) run natively.
import wan = require('wan-native');  // JavaScript: const wan = require('wan-native');

async function main() {
  const result = await wan.runWorkflow('workflow.json', {
    modelDirs: ['models'],  // or per kind: { diffusion_models: [...], text_encoders: [...], vae: [...], input: [...] }
    outputDir: 'output',
    onNodeStart: (id, classType) => console.log(`node ${id} (${classType})`),
  });
  console.log(result.outputs);  // { '<node id>': { files: [...] } } per VHS_VideoCombine
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
