// keel's Swagger UI start-up: the document and the OAuth2 redirect page are served by keel itself
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api-docs/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    oauth2RedirectUrl: window.location.origin + "/swagger-ui/assets/oauth2-redirect.html",
    persistAuthorization: true,
  });
});
